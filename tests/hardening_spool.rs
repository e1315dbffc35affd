//! Spool faults (issue 7): a full disk and a read-only spool refuse new mail with 452 4.3.1
//! and leave queued mail alone; truncated or garbled files are quarantined at start and at
//! rescan; a message deleted while it is being delivered does not come back.
//!
//! The disk tests mount a 2 MiB tmpfs (root only); where that fails they print SKIPPED.

mod common;

use common::smarthost::{Opts, Sink};
use common::*;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A small tmpfs mounted on a temp folder, unmounted on drop.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// mount mounts a 2 MiB tmpfs, or prints why the test is skipped and returns None.
    fn mount(test: &str) -> Option<Tmpfs> {
        let dir = TempDir::new("tmpfs");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED {test}: cannot mount a tmpfs (needs root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED {test}: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// remount switches the mount to "ro" or "rw".
    fn remount(&self, how: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{how}")])
            .arg(self.path())
            .status()
            .unwrap();
        assert!(st.success(), "remount {how}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

/// fill writes a file until the filesystem has no byte left; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let p = dir.join("filler");
    let mut f = File::create(&p).unwrap();
    for size in [65536, 4096, 512, 1] {
        let buf = vec![b'x'; size];
        while let Ok(n) = f.write(&buf) {
            if n == 0 {
                break;
            }
        }
    }
    let _ = f.sync_all();
    p
}

/// try_send runs one transaction and returns the reply that ended it: the DATA reply when
/// the relay refuses before 354, else the reply to the final dot.
fn try_send(relay: &Relay, body: &str) -> String {
    let mut c = relay.connect();
    c.greet();
    c.expect("MAIL FROM:<a@b.test>", "250");
    c.expect("RCPT TO:<c@d.test>", "250");
    let r = c.cmd("DATA");
    if !r.starts_with("354") {
        return r;
    }
    c.send_raw(body.as_bytes());
    c.send_raw(b"\r\n.\r\n");
    c.reply()
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn spool_ini(spool: &Path) -> String {
    format!("[queue]\ndir = {}\n", spool.display())
}

#[test]
fn disk_full_refuses_new_mail_with_452_and_keeps_queued_mail() {
    let Some(fs) = Tmpfs::mount("disk_full_refuses_new_mail_with_452_and_keeps_queued_mail") else {
        return;
    };
    let spool = fs.path().join("spool");
    let relay = Relay::start(&spool_ini(&spool));
    let kept = queued_id(&try_send(&relay, &message("kept", "queued before")));
    let stored = fs::read(spool.join("queue").join(&kept)).unwrap();

    let filler = fill(fs.path());
    let body = message("too much", &"0123456789abcdef\r\n".repeat(8192));
    let r = try_send(&relay, &body);
    assert!(r.starts_with("452 4.3.1"), "disk full: {r}");
    relay.wait_log("no space left");
    // Small messages too, and the session goes on after a refusal.
    let r = try_send(&relay, &message("small", "x"));
    assert!(r.starts_with("452 4.3.1"), "disk full, small message: {r}");
    assert_eq!(relay.queue_ids(), vec![kept.clone()]);
    assert_eq!(fs::read(spool.join("queue").join(&kept)).unwrap(), stored);
    assert!(
        files(&spool.join("tmp")).is_empty(),
        "tmp/ leftovers: {:?}",
        files(&spool.join("tmp"))
    );

    fs::remove_file(filler).unwrap();
    let id = queued_id(&try_send(&relay, &body));
    let mut ids = relay.queue_ids();
    ids.sort();
    let mut want = vec![kept.clone(), id];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(fs::read(spool.join("queue").join(&kept)).unwrap(), stored);
}

#[test]
fn read_only_spool_refuses_new_mail_with_452_and_recovers() {
    let Some(fs) = Tmpfs::mount("read_only_spool_refuses_new_mail_with_452_and_recovers") else {
        return;
    };
    let spool = fs.path().join("spool");
    let relay = Relay::start(&spool_ini(&spool));
    let kept = queued_id(&try_send(&relay, &message("kept", "queued before")));
    let stored = fs::read(spool.join("queue").join(&kept)).unwrap();

    fs.remount("ro");
    let r = try_send(&relay, &message("refused", "x"));
    fs.remount("rw");
    assert!(r.starts_with("452 4.3.1"), "read-only spool: {r}");
    relay.wait_log("Read-only file system");
    assert_eq!(relay.queue_ids(), vec![kept.clone()]);
    assert_eq!(fs::read(spool.join("queue").join(&kept)).unwrap(), stored);

    fs.remount("ro");
    // `queue list` and `queue show` still work on a read-only spool.
    let out = relay.cmd(&["queue", "show", &kept]);
    fs.remount("rw");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    queued_id(&try_send(&relay, &message("again", "x")));
    assert_eq!(relay.queue_ids().len(), 2);
}

/// A well-formed spool file, as the relay writes them.
fn valid_file(id: &str, subject: &str) -> Vec<u8> {
    format!(
        "picorelay-spool 1\nid: {id}\nsender: a@b.test\nclient: 192.0.2.7\nhelo: c.test\narrival: {}\n\
         eight-bit: no\nsmtputf8: no\nattempts: 0\nnext-attempt: 0\nbounced: no\n\
         rcpt: pending to=c@d.test\n\nSubject: {subject}\r\n\r\nhello\r\n",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    )
    .into_bytes()
}

/// What is put into queue/ before the relay starts, with the reason it is bad.
fn bad_files() -> Vec<(&'static str, Vec<u8>)> {
    let valid = valid_file("0000000000000000000000000002", "cut");
    vec![
        // Cut in the middle of the envelope (a power cut while copying it in).
        ("0000000000000000000000000002", valid[..60].to_vec()),
        // Random bytes, a NUL among them.
        (
            "0000000000000000000000000003",
            (0..=255u8).cycle().take(3000).collect(),
        ),
        ("0000000000000000000000000004", Vec::new()),
        (
            "0000000000000000000000000005",
            b"picorelay-spool 99\nid: x\n\nbody\r\n".to_vec(),
        ),
        // Right magic, then a control character and a line that never ends.
        (
            "0000000000000000000000000006",
            b"picorelay-spool 1\nsender: a\x1b[2J\n".to_vec(),
        ),
    ]
}

#[test]
fn corrupt_files_are_quarantined_at_start_and_at_rescan() {
    let sink = Sink::start(Opts::plain());
    let dir = TempDir::new("corrupt");
    let spool = dir.path().join("spool");
    let queue = spool.join("queue");
    fs::create_dir_all(&queue).unwrap();
    fs::write(
        queue.join("0000000000000000000000000001"),
        valid_file("0000000000000000000000000001", "valid"),
    )
    .unwrap();
    for (id, data) in bad_files() {
        fs::write(queue.join(id), data).unwrap();
    }
    fs::write(queue.join("README.txt"), "not a message").unwrap();
    let extra = format!(
        "{}[smarthost]\nhost = {}\ntls = none\n",
        spool_ini(&spool),
        sink.addr()
    );
    let relay = Relay::start(&extra);

    let t = sink.wait_txns(1);
    assert!(t[0].data.contains("Subject: valid"), "{}", t[0].data);
    let mut want: Vec<String> = bad_files().iter().map(|(id, _)| id.to_string()).collect();
    want.sort();
    assert_eq!(files(&spool.join("corrupt")), want);
    for (id, data) in bad_files() {
        // Quarantined as they were, for inspection.
        assert_eq!(fs::read(spool.join("corrupt").join(id)).unwrap(), data);
        relay.wait_log(&format!("corrupt/{id} for inspection"));
    }
    wait_for("the valid message to leave the queue", || {
        files(&queue) == ["README.txt"]
    });

    // A garbled file appearing while the relay runs (copied in by hand, another process).
    let late = "0000000000000000000000000007";
    let staged = dir.path().join(late);
    fs::write(
        &staged,
        b"picorelay-spool 1\nid: 7\ngarbage without a colon\n\n",
    )
    .unwrap();
    fs::rename(&staged, queue.join(late)).unwrap();
    wait_for("the late file in corrupt/", || {
        spool.join("corrupt").join(late).exists()
    });
    relay.wait_log(&format!("corrupt/{late} for inspection"));
    assert_eq!(files(&queue), ["README.txt"]);

    // Still healthy: it takes and forwards mail, and `queue list` works.
    let mut relay = relay;
    assert!(relay.child.as_mut().unwrap().try_wait().unwrap().is_none());
    queued_id(&try_send(&relay, &message("after", "x")));
    sink.wait_txns(2);
    assert!(relay.cmd(&["queue", "list"]).status.success());
}

/// deleted_while_delivering: the smarthost sits on the final dot for 3 s, `queue delete`
/// removes the message meanwhile, then the smarthost answers `dot_reply`.
fn deleted_while_delivering(dot_reply: &str, settled: &str) -> (Relay, Sink, String) {
    let sink = Sink::start(Opts::plain());
    sink.rule_times("DOT", &format!("DELAY 3000 {dot_reply}"), 1);
    let extra = format!(
        "[smarthost]\nhost = {}\ntls = none\n[queue]\nretry_min = 1s\nretry_max = 1s\n",
        sink.addr()
    );
    let relay = Relay::start(&extra);
    let id = queued_id(&try_send(
        &relay,
        &message("doomed", "deleted in flight\r\n"),
    ));
    let start = Instant::now();
    wait_for("the smarthost to get DATA", || sink.saw("DATA"));
    let out = relay.cmd(&["queue", "delete", &id]);
    assert!(
        start.elapsed() < Duration::from_millis(2500),
        "too slow to test"
    );
    assert!(
        out.status.success(),
        "queue delete: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    relay.wait_log(&format!("delivery {id}: {settled}"));
    // Give a resurrected file time to be found by a rescan and retried.
    std::thread::sleep(Duration::from_millis(2500));
    let spool = relay.spool();
    assert!(
        !spool.join("queue").join(&id).exists(),
        "the deleted message came back"
    );
    // Delivered messages' files kept for reuse (tmp/spare-ID) are the relay's, not leftovers.
    let leftovers: Vec<String> = files(&spool.join("tmp"))
        .into_iter()
        .filter(|f| !f.starts_with("spare-"))
        .collect();
    assert!(leftovers.is_empty(), "tmp/ leftovers: {leftovers:?}");
    let mails = sink
        .commands()
        .iter()
        .filter(|(_, c)| c.to_ascii_uppercase().starts_with("MAIL FROM:<A@B.TEST>"))
        .count();
    assert_eq!(mails, 1, "{:?}", sink.commands());
    assert!(!relay.log_text().contains("cannot record the attempt"));
    assert!(!relay.log_text().contains("cannot remove it"));
    (relay, sink, id)
}

#[test]
fn message_deleted_during_delivery_then_deferred_is_not_resurrected() {
    let (mut relay, sink, _) = deleted_while_delivering("451 4.3.0 try again later", "deferred");
    assert!(relay.queue_ids().is_empty());
    // Healthy afterwards.
    assert!(relay.child.as_mut().unwrap().try_wait().unwrap().is_none());
    queued_id(&try_send(&relay, &message("next", "x")));
    sink.wait_txns(1);
}

#[test]
fn message_deleted_during_delivery_then_accepted_is_done_once() {
    let (relay, _sink, id) = deleted_while_delivering("250 2.0.0 ok", "done");
    // (The sink records no Txn for a DELAYed reply; the relay's log says it went.)
    assert!(relay
        .log_text()
        .contains(&format!("delivery {id}: sent to smarthost (250 2.0.0 ok)")));
    assert!(relay.queue_ids().is_empty());
}

#[test]
fn message_deleted_during_delivery_then_refused_bounces_without_resurrecting() {
    let (relay, sink, id) = deleted_while_delivering("550 5.7.1 refused", "done");
    // The bounce (to a@b.test) goes out; the original never again.
    let t = sink.wait_txns(1);
    assert_eq!(t[0].mail_from, "");
    assert!(t[0].data.contains("550 5.7.1 refused"), "{}", t[0].data);
    wait_for("the bounce to leave the queue", || {
        relay.queue_ids().is_empty()
    });
    assert!(!relay.queue_ids().contains(&id));
}
