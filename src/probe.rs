//! `picorelay probe [--to ADDR]`: connects to the smarthost exactly as delivery does and prints
//! the transcript (secrets masked); with `--to`, sends a short test message.

use std::io::{Cursor, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::client::{Connection, RcptOutcome};
use crate::config::Config;
use crate::delivery;
use crate::message;
use crate::queue_cmd::human;
use crate::rewrite;
use crate::serve::load_config;
use crate::slots;
use crate::tls;

/// run probes the smarthost; exit 0 only when it would take mail (and, with `to`, took the
/// test message for that recipient), 1 otherwise.
pub fn run(config: &Path, to: Option<&str>) -> u8 {
    let Some(cfg) = load_config(config) else {
        return 1;
    };
    if cfg.smarthost.hosts.is_empty() {
        println!("probe: no smarthost configured ([smarthost] host is empty: hold mode)");
        return 1;
    }
    if let Some(to) = to {
        if to.is_empty()
            || to
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == '<' || c == '>')
        {
            println!("probe: {to:?} is not an address");
            return 1;
        }
    }
    // A connection slot, as delivery takes one: `max_connections` counts the probe too.
    let _slot = match connection_slot(&cfg) {
        Ok(slot) => slot,
        Err(e) => {
            println!("probe: {e}");
            return 1;
        }
    };
    let tokens = match delivery::tokens(&cfg) {
        Ok(t) => t,
        Err(e) => {
            println!("probe: {e}");
            return 1;
        }
    };
    if let Some(t) = &tokens {
        // The token delivery would use, asked for first so its source and lifetime show.
        let url = &t.settings().token_url;
        match t.get(None) {
            Ok(g) => println!(
                "probe: OAuth access token from {url} ({} grant), valid for {}",
                t.settings().grant.as_str(),
                human(g.valid_for.as_secs())
            ),
            Err(e) => {
                println!("probe: FAILED at auth: {}", e.explain(t.settings().grant));
                return 1;
            }
        }
    }
    let settings = match delivery::settings(&cfg, tokens) {
        Ok(s) => s,
        Err(e) => {
            println!("probe: {e}");
            return 1;
        }
    };
    // The client masks AUTH payloads and challenges before a line gets here.
    let mut print = |line: &str| {
        println!("{line}");
        let _ = std::io::stdout().flush();
    };
    let mut conn = match Connection::open(&settings, Some(&mut print)) {
        Ok(c) => c,
        Err(e) => {
            println!("probe: FAILED at {}: {}", e.stage, e.message);
            return 1;
        }
    };
    conn.set_transcript(Some(Box::new(|line: &str| println!("{line}"))));
    let peer = conn.peer();
    if let (Some(tls), Some(fp)) = (conn.tls_info(), conn.peer_fingerprint()) {
        // What a LAN relay with a self-signed certificate can be pinned to.
        println!("probe: {tls}, certificate {}", tls::format_fingerprint(&fp));
    }
    let code = match to {
        None => {
            println!("probe: ok: {peer} would take mail");
            0
        }
        Some(to) => send_test(&mut conn, &cfg, to, &peer),
    };
    conn.quit();
    code
}

/// How long the probe waits for a connection slot the running relay is using.
const SLOT_WAIT: Duration = Duration::from_secs(30);

/// connection_slot takes one of the `max_connections` smarthost connection slots, waiting
/// up to SLOT_WAIT while the running relay uses them all. Where the spool cannot be written
/// (another user), slots cannot be shared: the probe goes on without one.
fn connection_slot(cfg: &Config) -> Result<Option<slots::Slot>, String> {
    let max = cfg.smarthost.max_connections;
    let deadline = Instant::now() + SLOT_WAIT;
    let mut said = false;
    loop {
        match slots::try_take(&cfg.queue.dir, max) {
            Ok(Some(slot)) => {
                if said {
                    println!("probe: got connection slot {} of {max}", slot.n + 1);
                }
                return Ok(Some(slot));
            }
            Ok(None) if Instant::now() < deadline => {
                if !said {
                    println!(
                        "probe: all {max} smarthost connection(s) ([smarthost] max_connections) are in use by the running relay; waiting up to {}s",
                        SLOT_WAIT.as_secs()
                    );
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            Ok(None) => {
                return Err(format!(
                    "all {max} smarthost connection(s) stayed in use by the running relay; try again later"
                ))
            }
            Err(e) => {
                log::debug!("probe: connection slots unavailable ({e})");
                return Ok(None);
            }
        }
    }
}

/// send_test sends the test message with the sender, aliases and From rewriting delivery
/// would use.
fn send_test(conn: &mut Connection, cfg: &Config, to: &str, peer: &str) -> u8 {
    let host = &cfg.server.hostname;
    let sender = cfg
        .rewrite
        .sender
        .clone()
        .or_else(|| cfg.smarthost.username.clone().filter(|u| u.contains('@')))
        .unwrap_or_else(|| format!("picorelay@{host}"));
    let rcpt = rewrite::alias(to, &cfg.aliases, &cfg.server.local_domains)
        .unwrap_or_else(|| to.to_string());
    let from = cfg.rewrite.from.clone().unwrap_or_else(|| sender.clone());
    let now = message::now();
    let text = format!(
        "From: {from}\r\nTo: <{rcpt}>\r\nSubject: picorelay test message from {host}\r\n\
         Date: {}\r\nMessage-ID: <probe.{now}.{}@{host}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\n\
         This is a test message sent by `picorelay probe` on {host}.\r\n\
         It went through the smarthost {peer}: forwarding works.\r\n",
        message::rfc5322_date(now),
        std::process::id()
    );
    let size = text.len() as u64;
    match conn.send(
        &sender,
        std::slice::from_ref(&rcpt),
        &mut Cursor::new(text),
        size,
        false,
        false,
    ) {
        Ok(results) => match results.first() {
            Some(RcptOutcome::Accepted) => {
                println!("probe: ok: {peer} accepted the test message for <{rcpt}>");
                0
            }
            Some(RcptOutcome::Transient(r)) => {
                println!("probe: FAILED: <{rcpt}> deferred (temporary): {r}");
                1
            }
            Some(RcptOutcome::Throttled(kind, r)) => {
                println!(
                    "probe: FAILED: the smarthost throttles this account ({}): {r}",
                    kind.name()
                );
                1
            }
            Some(RcptOutcome::Permanent(r)) => {
                println!("probe: FAILED: <{rcpt}> refused: {r}");
                1
            }
            None => {
                println!("probe: FAILED: no answer for <{rcpt}>");
                1
            }
        },
        Err(e) => {
            println!("probe: FAILED at {}: {}", e.stage, e.message);
            1
        }
    }
}
