//! The `queue` commands: list, show and delete messages in the spool, safely
//! while the relay runs (every change is one atomic file operation).

use std::io::{self, Read, Write};
use std::path::Path;

use crate::message;
use crate::serve::load_spool_config as load_config;
use crate::spool::{self, Envelope, RcptState, Spool, SpoolError};

fn open_spool(path: &Path) -> Option<Spool> {
    let cfg = load_config(path)?;
    match Spool::open(&cfg.queue.dir, cfg.queue.max_size) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("picorelay: spool {}: {e}", cfg.queue.dir.display());
            None
        }
    }
}

/// list prints one line per queued message, oldest first. Messages due but held back by
/// pacing (`[smarthost] rate`, `daily_recipients`) show when their turn comes, from the
/// pacing state the running relay keeps in the spool.
pub fn list(path: &Path) -> u8 {
    let Some(cfg) = load_config(path) else {
        return 1;
    };
    let Some(spool) = open_spool(path) else {
        return 1;
    };
    let envs = match spool.scan() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("picorelay: {e}");
            return 1;
        }
    };
    let now = message::now();
    let now_ms = now.saturating_mul(1000);
    let pacer = crate::delivery::load_pacing(&cfg, spool.dir());
    let mut turns = pacer.slots(now_ms);
    let mut out = io::stdout().lock();
    for env in &envs {
        let size = spool
            .open_message(&env.id)
            .map(|(_, _, size)| size)
            .unwrap_or(0);
        let pending = env.recipients.iter().any(|r| r.state == RcptState::Pending);
        let paced = if pending && env.next_attempt <= now && !pacer.is_unlimited() {
            turns
                .next()
                .filter(|&t| t > now_ms)
                .map(|t| t.div_ceil(1000))
        } else {
            None
        };
        let _ = writeln!(out, "{}", list_line(env, size, now, paced));
    }
    if envs.is_empty() {
        let _ = writeln!(out, "queue is empty");
    }
    0
}

/// list_line formats one message: id, age, size, sender, pending recipients,
/// attempts, next attempt, last error.
pub fn list_line(env: &Envelope, size: u64, now: u64, paced: Option<u64>) -> String {
    let pending: Vec<&str> = env
        .recipients
        .iter()
        .filter(|r| r.state == RcptState::Pending)
        .map(|r| r.addr.as_str())
        .collect();
    let next = match paced {
        Some(t) => format!("in {} (rate limit)", human(t.saturating_sub(now).max(1))),
        None if env.next_attempt <= now => "now".to_string(),
        None => format!("in {}", human(env.next_attempt - now)),
    };
    format!(
        "{}  age={}  size={}  from=<{}>  to={}  attempts={}  next={}  error={}",
        env.id,
        human(now.saturating_sub(env.arrival)),
        size,
        env.sender,
        if pending.is_empty() {
            "-".to_string()
        } else {
            pending.join(",")
        },
        env.attempts,
        next,
        env.last_error.as_deref().unwrap_or("-")
    )
}

/// human formats seconds as "45s", "12m", "3h", "2d".
pub fn human(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// show prints the envelope, a blank line, then the stored message.
pub fn show(path: &Path, id: &str) -> u8 {
    let Some(spool) = open_spool(path) else {
        return 1;
    };
    if !spool::valid_id(id) {
        eprintln!("picorelay: {id:?} is not a queue id");
        return 1;
    }
    match spool.open_message(id) {
        Ok((env, mut body, size)) => {
            let mut out = io::stdout().lock();
            if let Ok(h) = spool::format_header(&env, size) {
                let _ = out.write_all(&h);
            }
            let mut buf = [0u8; 16 * 1024];
            loop {
                match body.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        eprintln!("picorelay: reading {id}: {e}");
                        return 1;
                    }
                }
            }
            0
        }
        Err(e) => {
            eprintln!("picorelay: {id}: {e}");
            1
        }
    }
}

/// delete removes each named message; exit 1 if any id is unknown.
pub fn delete(path: &Path, ids: &[&str]) -> u8 {
    let Some(spool) = open_spool(path) else {
        return 1;
    };
    let mut code = 0;
    for id in ids {
        if !spool::valid_id(id) {
            eprintln!("picorelay: {id:?} is not a queue id");
            code = 1;
            continue;
        }
        match spool.delete(id) {
            Ok(()) => println!("{id}: deleted"),
            Err(SpoolError::NotFound(_)) => {
                eprintln!("picorelay: {id}: no such message in the queue");
                code = 1;
            }
            Err(e) => {
                eprintln!("picorelay: {id}: {e}");
                code = 1;
            }
        }
    }
    code
}
