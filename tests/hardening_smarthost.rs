//! Smarthost faults (issue 7, item 3): a smarthost that is slow, talks garbage, never stops
//! talking, breaks TLS, hangs up mid-DATA (or mid-BDAT chunk) or never answers the final dot. Each fault ends with
//! the message still queued and the reason in `queue list` (or bounced when the smarthost said
//! no for good), and a healthy relay: once the smarthost behaves, the message goes out.

mod common;

use common::certs::certs;
use common::smarthost::{Opts, Sink};
use common::*;

/// A whole-reply timeout of 1 s (the final dot gets 2 s) and fast retries.
fn ini(sink: &Sink, extra: &str) -> String {
    let base = format!(
        "[smarthost]\nhost = {}\ntls = none\ntimeout = 1s\n\n[queue]\nretry_min = 1s\nretry_max = 2s\n",
        sink.addr()
    );
    merge_ini(&base, extra)
}

fn submit(relay: &Relay, body: &str) -> String {
    relay.submit("alice@example.com", &["bob@example.org"], body)
}

fn assert_running(relay: &mut Relay) {
    let st = relay.child.as_mut().unwrap().try_wait().unwrap();
    assert!(st.is_none(), "relay exited: {st:?}\n{}", relay.log_text());
    assert!(
        !relay.log_text().contains("panicked"),
        "{}",
        relay.log_text()
    );
}

/// fault submits one message to a smarthost misbehaving by `rules`, waits until `queue list`
/// shows one of `reasons` for it, checks nothing was delivered, then heals the smarthost and
/// checks the message goes out after `queue flush`.
fn fault(opts: Opts, extra: &str, rules: &[(&str, &str)], body: &str, reasons: &[&str]) {
    let sink = Sink::start(opts);
    for (prefix, reply) in rules {
        sink.rule(prefix, reply);
    }
    let mut relay = Relay::start(&ini(&sink, extra));
    let id = submit(&relay, body);
    let mut line = String::new();
    wait_for(&format!("one of {reasons:?} in queue list"), || {
        line = relay.queue_line(&id);
        reasons.iter().any(|r| line.contains(r))
    });
    eprintln!("queue list: {line}");
    assert!(line.contains("attempts="), "{line}");
    assert!(sink.txns().is_empty(), "delivered despite the fault");
    assert_running(&mut relay);

    sink.clear_rules();
    let out = relay.cmd(&["queue", "flush"]);
    assert!(out.status.success());
    let txns = sink.wait_txns(1);
    assert_eq!(txns[0].rcpts, ["bob@example.org"]);
    wait_for("the queue to empty", || relay.queue_ids().is_empty());
    assert_running(&mut relay);
}

fn small() -> String {
    message("fault", "body\r\n")
}

#[test]
fn greeting_slower_than_the_timeout() {
    fault(
        Opts::plain(),
        "",
        &[("GREETING", "DELAY 2500 220 sink.test slow")],
        &small(),
        &["waiting for the greeting: timed out"],
    );
}

#[test]
fn mail_reply_slower_than_the_timeout() {
    fault(
        Opts::plain(),
        "",
        &[("MAIL", "DELAY 2500 250 2.1.0 ok")],
        &small(),
        &["reply to MAIL: timed out"],
    );
}

/// A reply that trickles in one byte at a time, each within the timeout, must still be bounded
/// by the timeout as a whole (otherwise 100 lines of 512 octets could take days).
#[test]
fn reply_dripped_byte_by_byte_times_out_as_a_whole() {
    fault(
        Opts::plain(),
        "",
        &[(
            "MAIL",
            "DRIP 150 250 2.1.0 sender ok, said very very slowly indeed",
        )],
        &small(),
        &["reply to MAIL: timed out"],
    );
}

#[test]
fn garbage_greeting() {
    fault(
        Opts::plain(),
        "",
        &[("GREETING", "RAW \u{1}\u{2}garbage, not SMTP\r\n")],
        &small(),
        &["waiting for the greeting: smarthost sent an invalid reply"],
    );
}

#[test]
fn garbage_reply_to_rcpt() {
    fault(
        Opts::plain(),
        "",
        &[("RCPT", "RAW HTTP/1.1 400 Bad Request\r\n")],
        &small(),
        &["smarthost sent an invalid reply"],
    );
}

#[test]
fn over_long_reply_line() {
    let long = format!("RAW 250-{}\r\n250 ok\r\n", "x".repeat(5000));
    fault(
        Opts::plain(),
        "",
        &[("EHLO", long.as_str())],
        &small(),
        &["reply line too long"],
    );
}

#[test]
fn endless_multi_line_reply() {
    fault(
        Opts::plain(),
        "",
        &[("EHLO", "ENDLESS")],
        &small(),
        &["too many lines in one reply"],
    );
}

fn starttls_extra() -> String {
    format!(
        "[smarthost]\ntls = starttls\nca_file = {}\n",
        certs().ca.display()
    )
}

#[test]
fn tls_handshake_answered_with_garbage() {
    fault(
        Opts::starttls(),
        &starttls_extra(),
        &[(
            "STARTTLS",
            "RAW 220 2.0.0 go ahead\r\n && DELAY 300 RAW HTTP/1.1 400 Bad Request\r\n\r\n",
        )],
        &small(),
        &["TLS handshake failed"],
    );
}

#[test]
fn tls_handshake_cut_off() {
    fault(
        Opts::starttls(),
        &starttls_extra(),
        &[("STARTTLS", "RAW 220 2.0.0 go ahead\r\n && DELAY 300 DROP")],
        &small(),
        &["TLS handshake failed"],
    );
}

#[test]
fn connection_closed_in_the_middle_of_data() {
    // 4 MiB: the relay is still writing when the smarthost hangs up.
    let body = message(
        "big",
        &"0123456789abcdef0123456789abcdef\r\n".repeat(120_000),
    );
    fault(
        Opts::plain(),
        "",
        &[("BODY", "DROP")],
        &body,
        &["sending the message", "reply to the final dot"],
    );
}

#[test]
fn final_dot_never_answered() {
    fault(
        Opts::plain(),
        "",
        &[("DOT", "HANG")],
        &small(),
        &["reply to the final dot: timed out"],
    );
}

/// A permanent refusal after the data (a multi-line 554) bounces: the message leaves the queue
/// and the report goes to the sender through the same smarthost.
#[test]
fn permanent_refusal_after_the_dot_bounces() {
    let sink = Sink::start(Opts::plain());
    sink.rule_times("DOT", "554 5.6.0 content refused\n554 5.6.0 for good", 1);
    let mut relay = Relay::start(&ini(&sink, ""));
    let id = submit(&relay, &small());
    let txns = sink.wait_txns(1);
    assert_eq!(txns[0].mail_from, "", "the report has the null sender");
    assert_eq!(txns[0].rcpts, ["alice@example.com"]);
    assert!(txns[0].data.contains("content refused"), "{}", txns[0].data);
    wait_for("the queue to empty", || relay.queue_ids().is_empty());
    relay.wait_log(&format!("delivery {id}: bounced <bob@example.org>"));
    assert_running(&mut relay);
}

/// The same outcome rules with CHUNKING (RFC 3030): the message goes as one `BDAT n LAST`.
fn chunking() -> Opts {
    Opts {
        chunking: true,
        ..Opts::plain()
    }
}

/// A smarthost that hangs up in the middle of a BDAT chunk: the message stays queued with the
/// reason, and once the smarthost behaves it is delivered exactly once, still with BDAT.
#[test]
fn connection_closed_in_the_middle_of_a_bdat_chunk() {
    let body = message(
        "big chunk",
        &"0123456789abcdef0123456789abcdef\r\n".repeat(120_000),
    );
    fault(
        chunking(),
        "",
        &[("BODY", "DROP")],
        &body,
        &["sending the message", "reply to BDAT"],
    );
}

#[test]
fn bdat_last_deferred_with_4xx_stays_queued_then_goes_once() {
    let sink = Sink::start(chunking());
    sink.rule_times("DOT", "451 4.3.0 mailbox busy, try later", 1);
    let mut relay = Relay::start(&ini(&sink, ""));
    let id = submit(&relay, &small());
    let mut line = String::new();
    wait_for("the 451 in queue list", || {
        line = relay.queue_line(&id);
        line.contains("451 4.3.0 mailbox busy")
    });
    let out = relay.cmd(&["queue", "flush"]);
    assert!(out.status.success());
    let txns = sink.wait_txns(1);
    wait_for("the queue to empty", || relay.queue_ids().is_empty());
    let txns_now = sink.txns();
    assert_eq!(txns_now.len(), 1, "delivered once: {txns_now:?}");
    assert!(txns[0].chunked, "{:?}", txns[0]);
    assert_eq!(txns[0].rcpts, ["bob@example.org"]);
    assert_running(&mut relay);
}

/// A 5xx to BDAT LAST is the smarthost's final word on the message: it bounces, and the report
/// goes to the sender the same way (BDAT).
#[test]
fn permanent_refusal_of_the_last_bdat_chunk_bounces() {
    let sink = Sink::start(chunking());
    sink.rule_times("DOT", "554 5.6.0 content refused", 1);
    let mut relay = Relay::start(&ini(&sink, ""));
    let id = submit(&relay, &small());
    let txns = sink.wait_txns(1);
    assert_eq!(txns[0].mail_from, "", "the report has the null sender");
    assert!(txns[0].chunked, "{:?}", txns[0]);
    assert!(txns[0].data.contains("content refused"), "{}", txns[0].data);
    wait_for("the queue to empty", || relay.queue_ids().is_empty());
    relay.wait_log(&format!(
        "delivery {id}: bounced <bob@example.org>: 554 5.6.0 content refused"
    ));
    assert_running(&mut relay);
}
